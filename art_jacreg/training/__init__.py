"""Training machinery shared by the trainers: the one loop, its objectives, the non-finite guard, checks."""
