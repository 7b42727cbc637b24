"""Covariance statistics C_l = E[k k^T] of the edited matrices' inputs over a text corpus."""
