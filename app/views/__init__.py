"""The app's views, one per file: each builds its controls once (`root`), re-reads the state in
`refresh()` when shown, forgets what it showed in `reset()` (kiosk idle timeout), and hands every
user action to `app.state`."""
