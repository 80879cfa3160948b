"""The clinic: medication bundles (`bundle`), a live visit's arrays (`encoding`), the two
inference backends (`backends`), the recommender, type-ahead (`codes`), the visit being entered
(`visit`) and the clinic's per-session state (`state`)."""
