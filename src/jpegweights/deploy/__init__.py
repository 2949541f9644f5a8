"""Running the service on cluster engines, whose replica management, autoscaling and fault
recovery it reuses rather than reimplements.

- ``jpegweights.deploy.source``: fill a replica's local model store from a model source (another
  jpegweights server, fetched and verified with ``jpegweights.client``, or a shared folder);
- ``jpegweights.deploy.ray``: the service's own app (``service.create_app``) as a Ray Serve
  deployment, behind Ray's HTTP proxy (needs the ``[ray]`` extra).

Sits above ``service`` and ``client``; nothing below imports it.
"""
