"""unified_ode: generative ODEs from physical force fields (PFGM, PFGM++, diffusion, flows)."""

__version__ = "0.1.0"
