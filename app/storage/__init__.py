"""The local history database: `database` (History), `records` (patients and visits),
`migrations` (every table), `backup` (exports, backups, restores), `errors`, `paths`."""
