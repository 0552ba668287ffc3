"""mitoseg: mitochondria segmentation in EM volumes with 2D and 3D ResNet18 U-Nets.

Modules: io (volumes), data (patches), models, config, train, predict (blockwise), instances
(connected components, measurements), metrics, plots, compare (the 2D-vs-3D job), download, cli,
viewer (the napari plugin, an optional extra).
"""

from mitoseg.config import Config
from mitoseg.errors import MitosegError

__version__ = "0.1.0"
__all__ = ["Config", "MitosegError", "__version__"]
