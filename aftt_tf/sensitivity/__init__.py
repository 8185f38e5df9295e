"""Where to spend protection: sensitivity `scores` without campaigns, checked against
them, and protection plans verified by paired campaigns (`sensitivity_run`, what
aftt-sensitivity runs)."""
