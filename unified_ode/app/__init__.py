"""Command-line applications: composing configs into objects, training and sampling."""
