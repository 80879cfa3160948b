"""What one UI session of the app holds, composed from the two domains and the kiosk:

- `medication`: the clinic (`app.medication.state.MedicationState`): this session's open
  patient and visit over the bundle, recommender and history shared by every session;
- `news`: the News tab's feed (`app.news.state.NewsState`), one for the whole app: it loads its
  bundle on first use;
- `kiosk`: this session's idle timer and PIN lock (`app.kiosk.Kiosk`).

Heavy parts are loaded once (`AppState.open`) and shared between sessions (`session`). The
domains know nothing of each other; only the idle timeout reaches across (`on_idle`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from app.kiosk import DEFAULT_IDLE_TIMEOUT, Kiosk, KioskSettings, PinStore
from app.medication.bundle import Bundle, load_bundle
from app.medication.recommender import Recommender
from app.medication.state import DEFAULT_BUNDLE, MedicationState
from app.news.state import NewsState
from app.storage.database import History
from app.storage.paths import default_db_path

__all__ = ["AppState"]


class AppState:
    """One UI session: the clinic, the shared news feed and the kiosk lock."""

    def __init__(self, medication: MedicationState, news: NewsState, kiosk: Kiosk):
        self.medication = medication
        self.news = news
        self.kiosk = kiosk

    @classmethod
    def open(
        cls,
        bundle: str | os.PathLike[str] | Bundle | None = None,
        db: str | os.PathLike[str] | None = None,
        *,
        kiosk: bool = False,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        pin: str | None = None,
        backend: str = "auto",
        news_bundle: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] | None = None,
        warm: bool = False,
    ) -> AppState:
        """Load the medication bundle (default: the shipped one), open the history (default:
        `default_db_path()`); `pin` (digits) sets the kiosk PIN, stored hashed; `news_bundle`:
        the News tab's bundle (default: the shipped news demo), loaded when the tab opens;
        `warm`: build the code search's indexes in a background thread now."""
        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle or DEFAULT_BUNDLE)
        history = History(db if db is not None else default_db_path())
        pins = PinStore.beside(history.path)
        if pin:
            pins.set_pin(pin)
        medication = MedicationState(loaded, Recommender(loaded, backend=backend), history)
        if warm:  # the ICD dictionary's type-ahead index takes seconds: build it meanwhile
            threading.Thread(target=medication.warm_indexes, daemon=True).start()
        return cls(
            medication,
            NewsState(history, news_bundle),
            Kiosk(pins, KioskSettings(enabled=kiosk, idle_timeout=idle_timeout), clock),
        )

    def session(self) -> AppState:
        """A fresh state for one more UI session, sharing the bundle, model, database and feed."""
        return AppState(self.medication.session(), self.news, self.kiosk.session())

    @property
    def history(self) -> History:
        """The one history database, shared by both domains."""
        return self.medication.history

    # -- activity and the idle timeout

    def touch(self) -> None:
        """Any user activity: the kiosk's idle clock starts again."""
        self.kiosk.touch()

    def idle_expired(self) -> bool:
        return self.kiosk.idle_expired()

    def on_idle(self) -> None:
        """Back to the start: the patient's data is dropped and, with a PIN, the kiosk locks."""
        self.medication.close_patient()
        self.kiosk.relock()
