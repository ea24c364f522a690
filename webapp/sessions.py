"""Django's database sessions, read with one hand-written statement.

Every request of a signed-in person loads their session first; through the ORM that
read cost more CPU than any other step of an annotator's submit except the template
(profiled under tests/benchmarks/annotate_http.py). Writing, expiry, cycling keys on
login and ``clearsessions`` stay Django's: only the read is replaced.
"""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.utils import timezone

from annotation import rows


class SessionStore(db.SessionStore):
    def _get_session_from_db(self):
        """The live session row for this key (only ``session_data`` is read), else None."""
        model = self.model
        found = rows.fetch(
            f"SELECT session_data FROM {rows.table(model)} WHERE session_key = %s AND expire_date > %s",
            [self.session_key, rows.db_value(model, "expire_date", timezone.now())],
        )
        if not found:
            self._session_key = None
            return None
        return model(session_key=self.session_key, session_data=found[0][0])
