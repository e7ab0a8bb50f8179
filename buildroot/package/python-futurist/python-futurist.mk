################################################################################
#
# python-futurist
#
################################################################################

PYTHON_FUTURIST_VERSION = 3.5.0
PYTHON_FUTURIST_SOURCE = futurist-$(PYTHON_FUTURIST_VERSION).tar.gz
# PyPI's stable sdist path (redirects to the hashed files.pythonhosted.org location)
PYTHON_FUTURIST_SITE = https://files.pythonhosted.org/packages/source/f/futurist
PYTHON_FUTURIST_SETUP_TYPE = setuptools
PYTHON_FUTURIST_LICENSE = Apache-2.0
PYTHON_FUTURIST_LICENSE_FILES = LICENSE
PYTHON_FUTURIST_DEPENDENCIES = host-python-pbr

$(eval $(python-package))
