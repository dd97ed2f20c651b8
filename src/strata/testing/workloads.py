"""Real workload images for runtime tests, built here from Dockerfiles (cached on disk).

:func:`nginx_image` builds ``localhost/nginx:latest`` from ``dockerfiles/nginx`` (Debian's
nginx installed from the local Debian mirror on :func:`~strata.testing.baseimages.debian_oci`,
a page COPYed to ``/var/www/html``, the logs linked to ``/dev/stdout``/``/dev/stderr`` as
the official image does, ``CMD ["nginx", "-g", "daemon off;"]``) with ``buildah bud
--isolation chroot --layers``, exported to an OCI layout by skopeo; the result is cached like
the base images (:func:`~strata.testing.baseimages.build_images`), so only the first run
pays for ``apt-get install``. :func:`python_image` builds ``localhost/python:latest`` the
same way from ``dockerfiles/python`` (Debian's python3-minimal and a job script, ``job.py``).
"""

from __future__ import annotations

from pathlib import Path

from strata.testing.baseimages import BuildahImage, build_images

__all__ = ["DOCKERFILES", "NGINX_PAGE", "NGINX_REF", "PYTHON_REF", "nginx_image", "python_image"]

#: The Dockerfile directories of the workload images.
DOCKERFILES = Path(__file__).parent / "dockerfiles"

#: The nginx image's name once loaded.
NGINX_REF = "localhost/nginx:latest"

#: The Python image's name once loaded.
PYTHON_REF = "localhost/python:latest"

#: The page the nginx image serves at ``/``.
NGINX_PAGE = DOCKERFILES / "nginx" / "index.html"


def nginx_image(cache_dir: Path | None = None) -> BuildahImage:
    """The nginx workload image (built on first use, then cached).

    Args:
        cache_dir: the image cache (default: the base images' cache).

    Returns:
        The image: ``.oci_layout`` holds ``.ref`` (``localhost/nginx:latest``).

    Raises:
        strata.testing.tools.ToolError: the build failed (buildah's output is in it).
    """
    return build_images(DOCKERFILES, cache_dir, names=["nginx"])["nginx"]


def python_image(cache_dir: Path | None = None) -> BuildahImage:
    """The Python workload image (built on first use, then cached); see :func:`nginx_image`."""
    return build_images(DOCKERFILES, cache_dir, names=["python"])["python"]
