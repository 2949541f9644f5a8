"""jpegweights: neural-network weights stored and shipped as JPEG-coded tiles.

Subpackages (each a folder at the repository's root, installed under this name):

- ``jpegweights.codec``: state_dict <-> ``.jpw`` packages (no HTTP, no model knowledge);
- ``jpegweights.client``: download, verify, rebuild and run (``pip install jpegweights``);
- ``jpegweights.service``: the FastAPI model server (``pip install 'jpegweights[serve]'``);
- ``jpegweights.cli``: the ``jpegweights`` command;
- ``jpegweights.training``: the MNIST seed experiment.
"""

__version__ = "0.1.0"
