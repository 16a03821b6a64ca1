"""LightningDataModules for every data set of unified_ode."""

from unified_ode.data.image_folder import ImageFolderDataModule
from unified_ode.data.images import DigitsDataModule, FacesDataModule, ImageDataModule
from unified_ode.data.torchvision_sets import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from unified_ode.data.toy2d import TOY_SETS, Toy2DDataModule, toy_samples

__all__ = ["TOY_SETS", "CIFAR10DataModule", "DigitsDataModule", "FacesDataModule",
           "FashionMNISTDataModule", "ImageDataModule", "ImageFolderDataModule",
           "MNISTDataModule", "Toy2DDataModule", "toy_samples"]
