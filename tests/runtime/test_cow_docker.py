"""Side by side with docker (a private dockerd 20.10, overlay2): the same script in a
container of the same image gives the same ``diff`` lines, the same ``inspect -s`` SizeRw,
and a committed image with the same changes."""

from __future__ import annotations

import json
from pathlib import Path

from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

SCRIPT = ("echo new > /created.txt; echo more >> /etc/passwd; rm /bin/true; rm -r /var/spool;"
          " mkdir -p /home/a/b && echo deep > /home/a/b/c; rm -r /usr && mkdir /usr &&"
          " echo only > /usr/only; ln -s /etc/passwd /link; chmod 700 /tmp")


def test_diff_size_and_commit_match_docker(dockerd: tools.Dockerd, busybox_layout: Path,
                                           tmp_path: Path) -> None:
    strata = tools.StrataCLI(tmp_path / "root")
    strata("load", "-i", busybox_layout)
    archive = tmp_path / "busybox.tar"
    strata("save", "-o", archive, BUSYBOX_REF)
    dockerd.docker("load", "-i", str(archive))
    try:
        dockerd.docker("run", "--network", "none", "--name", "cow", BUSYBOX_REF, "sh", "-c",
                       SCRIPT)
        strata("run", "--network", "none", "--name", "cow", BUSYBOX_REF, "sh", "-c", SCRIPT)
        docker_diff = dockerd.docker("diff", "cow").stdout.splitlines()
        strata_diff = strata("diff", "cow").stdout.splitlines()
        # docker 20.10 prints its changes in map order; strata in walk order (sorted).
        assert strata_diff == sorted(docker_diff, key=lambda line: line[2:].split("/"))

        docker_size = json.loads(dockerd.docker("inspect", "-s", "cow").stdout)[0]["SizeRw"]
        strata_size = json.loads(strata("inspect", "-s", "cow").stdout)[0]["SizeRw"]
        assert strata_size == docker_size

        dockerd.docker("commit", "cow", "localhost/cow-committed")
        strata("commit", "cow", "localhost/cow-committed")
        check = ("cat /created.txt; tail -n 1 /etc/passwd; ls /bin/true /var/spool 2>&1;"
                 " ls /usr; cat /home/a/b/c; readlink /link; stat -c %a /tmp")
        docker_run = dockerd.docker("run", "--rm", "--network", "none",
                                    "localhost/cow-committed", "sh", "-c", check, check=False)
        strata_run = strata("run", "--rm", "--network", "none", "localhost/cow-committed",
                            "sh", "-c", check, check=False)
        assert strata_run.stdout == docker_run.stdout
        assert (strata_run.returncode, docker_run.returncode) == (0, 0)
        docker_hist = json.loads(dockerd.docker(
            "image", "inspect", "localhost/cow-committed").stdout)[0]
        strata_hist = json.loads(strata("image", "inspect", "localhost/cow-committed").stdout)[0]
        assert len(strata_hist["RootFS"]["Layers"]) == len(docker_hist["RootFS"]["Layers"])
        assert strata_hist["Config"]["Cmd"] == docker_hist["Config"]["Cmd"]
    finally:
        dockerd.docker("rm", "-f", "cow", check=False)
        dockerd.docker("rmi", "-f", "localhost/cow-committed", BUSYBOX_REF, check=False)
        strata("rm", "-f", "cow", check=False)
