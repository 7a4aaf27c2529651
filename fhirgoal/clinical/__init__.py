"""Clinical logic of measurement-based care: GAS, goal achievement, ORS/SRS (issue 4)."""
