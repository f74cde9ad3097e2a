"""Image reading, real-folder import, perceptual hashing and leakage-safe splitting."""
