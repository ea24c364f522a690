import getpass

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webapp.roles import ROLES, create_user_with_role


class Command(BaseCommand):
    help = "Create a user (or reset their password) with a role: annotator, admin or researcher."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--password", help="Omit to be asked (or set TANDEM_PASSWORD).")
        parser.add_argument("--email", default="")

    def handle(self, *args, username, role, password, email, **options):
        if not password:
            import os

            password = os.environ.get("TANDEM_PASSWORD") or getpass.getpass(f"Password for {username}: ")
        if not password:
            raise CommandError("A password is required.")
        User = get_user_model()
        name_field = User._meta.get_field(User.USERNAME_FIELD)
        try:
            name_field.clean(username, None)  # length and characters, as the admin's user form checks
            existing = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
            validate_password(
                password, user=existing or User(**{User.USERNAME_FIELD: username, "email": email})
            )
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from error
        user = create_user_with_role(username=username, password=password, role=role, email=email)
        self.stdout.write(
            self.style.SUCCESS(f"{user.username} is now a{'n' if role[0] in 'aeiou' else ''} {role}.")
        )
