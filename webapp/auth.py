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
from webapp.roles import ADMIN, ROLES


class RoleAwareBackend(ModelBackend):
    def get_user(self, user_id):
        user_model = get_user_model()
        groups = user_model.groups.through
        role_names = ", ".join(["%s"] * len(ROLES))
        try:
            found = rows.fetch(
                f"""SELECT {rows.columns(user_model, "u")}, g.name
                    FROM {rows.table(user_model)} u
                    LEFT JOIN {rows.table(groups)} ug ON ug.user_id = u.id
                    LEFT JOIN {rows.table(Group)} g ON g.id = ug.group_id AND g.name IN ({role_names})
                    WHERE u.id = %s""",
                [*ROLES, int(user_id)],
            )
        except (TypeError, ValueError):
            return None
        if not found:
            return None
        user = rows.instance(user_model, found[0][:-1])
        if not self.user_can_authenticate(user):
            return None
        roles = {row[-1] for row in found if row[-1]}
        if user.is_superuser:
            roles.add(ADMIN)
        user._tandem_roles = roles if user.is_active else set()
        return user
