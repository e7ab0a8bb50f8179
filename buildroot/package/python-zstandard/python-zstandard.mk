################################################################################
#
# python-zstandard
#
################################################################################

PYTHON_ZSTANDARD_VERSION = 0.25.0
PYTHON_ZSTANDARD_SOURCE = zstandard-$(PYTHON_ZSTANDARD_VERSION).tar.gz
PYTHON_ZSTANDARD_SITE = https://files.pythonhosted.org/packages/fd/aa/3e0508d5a5dd96529cdc5a97011299056e14c6505b678fd58938792794b1
PYTHON_ZSTANDARD_SETUP_TYPE = setuptools
PYTHON_ZSTANDARD_LICENSE = BSD-3-Clause
PYTHON_ZSTANDARD_LICENSE_FILES = LICENSE
PYTHON_ZSTANDARD_DEPENDENCIES = host-python-packaging
# cffi is an optional build requirement (the CFFI backend): only the C
# backend is built.
PYTHON_ZSTANDARD_BUILD_OPTS = --skip-dependency-check

$(eval $(python-package))
