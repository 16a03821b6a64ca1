"""LightningDataModules for every data set of unified_ode."""

from unified_ode.data.toy2d import TOY_SETS, Toy2DDataModule, toy_samples

__all__ = ["TOY_SETS", "Toy2DDataModule", "toy_samples"]
