"""Online experiments: shoppers split between the champion and a challenger, and an always-valid sequential test
that decides from their feedback whether to promote, keep collecting or roll back."""
