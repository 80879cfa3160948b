"""The drivers the benches and the browser tests share (test tooling: app/ ships without it).

- `server`: the app in web mode, `app.main.run(web=True, ...)`, on a free 127.0.0.1 port with a
  fresh database (`AppServer`);
- `browser`: Chromium and the app's page driven with Playwright's sync API (tests,
  bench/app_latency.py); `browser_async`: the same with the asyncio API, plus the probes of a
  kiosk visit (bench/kiosk_load.py);
- `flet_protocol`, `control_tree`: a Flet client speaking the server's WebSocket protocol, no
  browser, and the page's control tree it keeps (bench/kiosk_protocol_load.py);
- `kiosk_session`: what both kiosk load benches share: a session's records and loop of
  visits, the concurrent run and its window, the server around it, the database check, report
  pieces;
- `bundles` (which bundle, what to type), `app_ui` (the identifiers and status texts the
  drivers look for), `measure` (percentiles, machine facts, CPU by process group), `errors`,
  `script` (SIGTERM and a watchdog for scripts that start a server).
"""
