"""The kernel: the run lifecycle, its sync and async drivers, and the sync bridge."""
