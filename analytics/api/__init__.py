"""HTTP resources, one blueprint module each."""
