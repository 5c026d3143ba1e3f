"""Small helpers shared by the three scripts: errors, seeding and devices, atomic files, metrics, logging."""
