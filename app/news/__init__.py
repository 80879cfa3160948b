"""The News tab: news bundles (`bundle`), the piece tokenizer, the two encoders, the item-vector
cache (`store`), the ranker, the reader's clicks and imported articles (`history`), and the
feed's state (`state`)."""
