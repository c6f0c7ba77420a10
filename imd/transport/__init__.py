"""Transport: frames in, packets out; local sessions; routing to users."""
