"""The three roles (Django groups) and the decorators that guard views with them.

An ``admin`` runs projects and training, a ``researcher`` reads and exports data,
an ``annotator`` ranks responses. Superusers count as admins.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

ANNOTATOR = "annotator"
ADMIN = "admin"
RESEARCHER = "researcher"
ROLES = (ANNOTATOR, ADMIN, RESEARCHER)


def roles_of(user) -> set[str]:
    if not user.is_authenticated or not user.is_active:
        return set()
    cached = getattr(user, "_tandem_roles", None)
    if cached is None:
        cached = remember_roles(user, user.groups.filter(name__in=ROLES).values_list("name", flat=True))
    return cached


def remember_roles(user, group_names) -> set[str]:
    """The roles behind ``group_names`` (superusers are admins too), kept on ``user`` for the request."""
    roles = set(group_names) & set(ROLES)
    if user.is_superuser:
        roles.add(ADMIN)
    user._tandem_roles = roles
    return roles


def has_role(user, *roles: str) -> bool:
    return bool(roles_of(user) & set(roles))


def role_required(*roles: str):
    """Login required, then 403 unless the user holds one of ``roles``."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(request, *args, **kwargs):
            if not has_role(request.user, *roles):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def roles_context(request):
    roles = roles_of(request.user) if hasattr(request, "user") else set()
    return {
        "is_admin": ADMIN in roles,
        "is_researcher": RESEARCHER in roles,
        "is_annotator": ANNOTATOR in roles,
    }


def create_user_with_role(*, username: str, password: str, role: str, email: str = ""):
    """Create (or update) a user holding ``role``; admins also get the Django admin."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.")
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=username, defaults={"email": email})
    user.set_password(password)
    user.is_staff = user.is_superuser = role == ADMIN
    user.save()
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user
