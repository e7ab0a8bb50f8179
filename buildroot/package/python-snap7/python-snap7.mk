################################################################################
#
# python-snap7
#
################################################################################

PYTHON_SNAP7_VERSION = 3.3.0
PYTHON_SNAP7_SOURCE = python_snap7-$(PYTHON_SNAP7_VERSION).tar.gz
# PyPI's stable sdist path (redirects to the hashed files.pythonhosted.org location)
PYTHON_SNAP7_SITE = https://files.pythonhosted.org/packages/source/p/python-snap7
PYTHON_SNAP7_SETUP_TYPE = setuptools
PYTHON_SNAP7_LICENSE = MIT
PYTHON_SNAP7_LICENSE_FILES = LICENSE

$(eval $(python-package))
