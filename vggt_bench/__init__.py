"""vggt-bench: measure where VGGT spends time and memory as the frame count grows."""
