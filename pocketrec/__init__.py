"""The front door: the `pocketrec` command. It imports every stage; no stage imports it."""
