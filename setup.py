"""Mount the top-level methods/ tasks/ kernels/ conf/ folders as sparsebench.methods etc. (wheel and editable)."""
from setuptools import find_packages, setup

MOUNTS = {"sparsebench": "sparsebench", "sparsebench.methods": "methods", "sparsebench.tasks": "tasks",
          "sparsebench.kernels": "kernels", "sparsebench.conf": "conf"}

packages, package_dir = [], {}
for pkg, folder in MOUNTS.items():
    package_dir[pkg] = folder
    packages.append(pkg)
    for sub in find_packages(folder):
        packages.append(f"{pkg}.{sub}")

setup(packages=packages, package_dir=package_dir)
