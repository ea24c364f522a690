"""Hand-written SQL for the annotator's hot path, read back into ordinary model instances.

Every submit answers with the next item, and building that answer through the ORM took
~25 statements whose Python-side compilation cost more CPU than the database spent
answering them (profiled: ~35 ms of CPU per submit, two thirds of it in query building).
The few statements on that path are therefore written out by hand in portable SQL (the
same text runs on PostgreSQL and on the embedded SQLite; only ``FOR UPDATE`` is added
where the database has it), and their rows come back as the usual models, converted by
the same converters the ORM would apply, so the rest of the code cannot tell.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

from django.db import connection
from django.db.models import Model


@cache
def _fields(model: type[Model], names: tuple[str, ...] | None = None) -> tuple:
    """The concrete fields of ``model``, or those of them named (by attname) in ``names``."""
    fields = model._meta.concrete_fields
    return tuple(fields if names is None else [f for f in fields if f.attname in names])


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@cache
def columns(model: type[Model], alias: str, names: tuple[str, ...] | None = None) -> str:
    """``alias."col", ...`` for the concrete fields of ``model`` (only ``names``, if given), in
    the order ``instance`` reads them."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in _fields(model, names))


def width(model: type[Model], names: tuple[str, ...] | None = None) -> int:
    return len(_fields(model, names))


@cache
def _converters(model: type[Model], vendor: str, names: tuple[str, ...] | None) -> tuple:
    # What SQLCompiler.get_converters would apply to these columns on this backend.
    out = []
    for field in _fields(model, names):
        expression = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
        out.append(tuple(found) and (tuple(found), expression))
    return tuple(out)


def converted(model: type[Model], values: Sequence, names: tuple[str, ...] | None = None) -> list:
    """``values`` selected with ``columns(model, ..., names)`` as the model's fields hold them."""
    out = list(values)
    for i, entry in enumerate(_converters(model, connection.vendor, names)):
        if entry:
            functions, expression = entry
            for convert in functions:
                out[i] = convert(out[i], expression, connection)
    return out


def instance(model: type[Model], values: Sequence, names: tuple[str, ...] | None = None):
    """A model instance from ``values`` selected with ``columns(model, ..., names)``; fields
    left out of ``names`` are deferred, as with ``QuerySet.only()``."""
    attnames = [f.attname for f in _fields(model, names)]
    return model.from_db(connection.alias, attnames, converted(model, values, names))


def db_value(model: type[Model], field_name: str, value):
    """``value`` as the database wants it for ``model.field_name`` (UUIDs, JSON, datetimes)."""
    return model._meta.get_field(field_name).get_db_prep_value(value, connection, prepared=False)


def fetch(sql: str, params: Iterable = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return cursor.fetchall()


def execute(sql: str, params: Iterable = ()) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return cursor.rowcount


def for_update(*, skip_locked: bool = False, of: str = "") -> str:
    """The row-lock clause where the database has one (SQLite's IMMEDIATE transactions lock anyway)."""
    features = connection.features
    if not features.has_select_for_update:
        return ""
    clause = " FOR UPDATE"
    if of and features.has_select_for_update_of:
        clause += f" OF {of}"
    if skip_locked and features.has_select_for_update_skip_locked:
        clause += " SKIP LOCKED"
    return clause


def insert(obj: Model, *, along: Sequence[tuple[str, Sequence]] = ()) -> Model:
    """INSERT ``obj`` (auto fields filled as ``save()`` would) and set its primary key.

    ``along``: other writes, as (SQL, parameters), to make in the same statement where the
    database allows data-modifying ``WITH`` clauses (PostgreSQL), else one after another:
    each statement saved is a round trip and a parse fewer on the hot path.
    """
    model = type(obj)
    fields = [f for f in _fields(model) if not f.primary_key]
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {table(model)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(model._meta.pk.column)}"
    )
    if along and connection.vendor == "postgresql":
        clauses = ", ".join(f"along_{i} AS ({write})" for i, (write, _) in enumerate(along))
        sql = f"WITH {clauses} {sql}"
        values = [value for _, params in along for value in params] + values
    else:
        for write, params in along:
            execute(write, params)
    obj.pk = fetch(sql, values)[0][0]
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


def prefetched(obj: Model, name: str, related: list) -> None:
    """Fill ``obj.<name>.all()`` with ``related`` as ``prefetch_related`` would, so it costs no query."""
    queryset = getattr(obj, name).all()
    queryset._result_cache = related
    queryset._prefetch_done = True
    obj.__dict__.setdefault("_prefetched_objects_cache", {})[name] = queryset
