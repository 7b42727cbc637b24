"""What an edit is: requests, the batch of weight deltas a method computes, the ledger that applies them."""
