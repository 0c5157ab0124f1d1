"""Offline data: padded episodes, transitions, segments, normalisation, Minari I/O."""
