"""A comparison's responses all answer its prompt, enforced by the database.

Django has no composite foreign keys, so triggers check every insert or update of
a comparison item (and any later change of a response's or comparison's prompt).
"""

from django.db import migrations

POSTGRES_FORWARD = """
CREATE OR REPLACE FUNCTION annotation_item_same_prompt() RETURNS trigger AS $$
BEGIN
  IF (SELECT prompt_id FROM annotation_response WHERE id = NEW.response_id)
     IS DISTINCT FROM (SELECT prompt_id FROM annotation_comparison WHERE id = NEW.comparison_id) THEN
    RAISE EXCEPTION 'response % does not answer the prompt of comparison %', NEW.response_id, NEW.comparison_id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER annotation_item_same_prompt BEFORE INSERT OR UPDATE ON annotation_comparisonitem
  FOR EACH ROW EXECUTE FUNCTION annotation_item_same_prompt();

CREATE OR REPLACE FUNCTION annotation_prompt_change_keeps_items() RETURNS trigger AS $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM annotation_comparisonitem i
      JOIN annotation_response r ON r.id = i.response_id
      JOIN annotation_comparison c ON c.id = i.comparison_id
     WHERE (i.response_id = NEW.id AND TG_TABLE_NAME = 'annotation_response'
            OR i.comparison_id = NEW.id AND TG_TABLE_NAME = 'annotation_comparison')
       AND r.prompt_id <> c.prompt_id
  ) THEN
    RAISE EXCEPTION 'changing the prompt would leave a comparison with a response to another prompt'
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER annotation_response_prompt_change AFTER UPDATE OF prompt_id ON annotation_response
  FOR EACH ROW EXECUTE FUNCTION annotation_prompt_change_keeps_items();
CREATE CONSTRAINT TRIGGER annotation_comparison_prompt_change AFTER UPDATE OF prompt_id ON annotation_comparison
  FOR EACH ROW EXECUTE FUNCTION annotation_prompt_change_keeps_items();
"""

POSTGRES_REVERSE = """
DROP TRIGGER IF EXISTS annotation_comparison_prompt_change ON annotation_comparison;
DROP TRIGGER IF EXISTS annotation_response_prompt_change ON annotation_response;
DROP FUNCTION IF EXISTS annotation_prompt_change_keeps_items();
DROP TRIGGER IF EXISTS annotation_item_same_prompt ON annotation_comparisonitem;
DROP FUNCTION IF EXISTS annotation_item_same_prompt();
"""

_SQLITE_ITEM_CHECK = """
CREATE TRIGGER annotation_item_same_prompt_{event} BEFORE {event} ON annotation_comparisonitem
FOR EACH ROW WHEN (SELECT prompt_id FROM annotation_response WHERE id = NEW.response_id)
              IS NOT (SELECT prompt_id FROM annotation_comparison WHERE id = NEW.comparison_id)
BEGIN SELECT RAISE(ABORT, 'response does not answer the prompt of its comparison'); END;
"""

SQLITE_FORWARD = [
    _SQLITE_ITEM_CHECK.format(event="INSERT"),
    _SQLITE_ITEM_CHECK.format(event="UPDATE"),
    """
CREATE TRIGGER annotation_response_prompt_change BEFORE UPDATE OF prompt_id ON annotation_response
FOR EACH ROW WHEN EXISTS (SELECT 1 FROM annotation_comparisonitem i JOIN annotation_comparison c ON c.id = i.comparison_id
                          WHERE i.response_id = NEW.id AND c.prompt_id <> NEW.prompt_id)
BEGIN SELECT RAISE(ABORT, 'changing the prompt would leave a comparison with a response to another prompt'); END;
""",
    """
CREATE TRIGGER annotation_comparison_prompt_change BEFORE UPDATE OF prompt_id ON annotation_comparison
FOR EACH ROW WHEN EXISTS (SELECT 1 FROM annotation_comparisonitem i JOIN annotation_response r ON r.id = i.response_id
                          WHERE i.comparison_id = NEW.id AND r.prompt_id <> NEW.prompt_id)
BEGIN SELECT RAISE(ABORT, 'changing the prompt would leave a comparison with a response to another prompt'); END;
""",
]

SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS annotation_item_same_prompt_INSERT",
    "DROP TRIGGER IF EXISTS annotation_item_same_prompt_UPDATE",
    "DROP TRIGGER IF EXISTS annotation_response_prompt_change",
    "DROP TRIGGER IF EXISTS annotation_comparison_prompt_change",
]


def _run(statements_by_vendor):
    def apply(apps, schema_editor):
        statements = statements_by_vendor.get(schema_editor.connection.vendor)
        if statements is None:
            raise RuntimeError(f"No prompt-match trigger for {schema_editor.connection.vendor}")
        # A raw cursor: the PL/pgSQL bodies contain '%' placeholders of their own.
        with schema_editor.connection.cursor() as cursor:
            for statement in [statements] if isinstance(statements, str) else statements:
                cursor.execute(statement)

    return apply


class Migration(migrations.Migration):
    dependencies = [("annotation", "0002_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": POSTGRES_REVERSE, "sqlite": SQLITE_REVERSE}),
        )
    ]
