"""One module per tab of the page; each `build(ctx)` creates its components and wires its events."""
