"""Authentication that reads the user and their roles in one statement.

Every annotator request needs both (``role_required``); Django's ``ModelBackend`` reads
the user, then ``roles_of`` reads the groups, two compiled ORM queries on the hottest
path. Passwords, permissions and everything else stay ``ModelBackend``'s.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group

from annotation import rows
from webapp.roles import ROLES, remember_roles


class RoleAwareBackend(ModelBackend):
    def get_user(self, user_id):
        user_model = get_user_model()
        groups = user_model.groups.through
        role_names = ", ".join(["%s"] * len(ROLES))
        try:
            user_id = int(user_id)
        except (TypeError, ValueError):
            return None
        found = rows.fetch(
            f"""SELECT {rows.columns(user_model, "u")}, g.name
                FROM {rows.table(user_model)} u
                LEFT JOIN {rows.table(groups)} ug ON ug.user_id = u.id
                LEFT JOIN {rows.table(Group)} g ON g.id = ug.group_id AND g.name IN ({role_names})
                WHERE u.id = %s""",
            [*ROLES, user_id],
        )
        if not found:
            return None
        user = rows.instance(user_model, found[0][:-1])
        if not self.user_can_authenticate(user):
            return None
        remember_roles(user, (row[-1] for row in found if row[-1]))
        return user
