################################################################################
#
# python-debtcollector
#
################################################################################

# 3.0.0, not 3.1.0: 3.1.0 needs wrapt >= 2.1 and Buildroot 2026.02.3 ships wrapt 2.0.1
PYTHON_DEBTCOLLECTOR_VERSION = 3.0.0
PYTHON_DEBTCOLLECTOR_SOURCE = debtcollector-$(PYTHON_DEBTCOLLECTOR_VERSION).tar.gz
# PyPI's stable sdist path (redirects to the hashed files.pythonhosted.org location)
PYTHON_DEBTCOLLECTOR_SITE = https://files.pythonhosted.org/packages/source/d/debtcollector
PYTHON_DEBTCOLLECTOR_SETUP_TYPE = setuptools
PYTHON_DEBTCOLLECTOR_LICENSE = Apache-2.0
PYTHON_DEBTCOLLECTOR_LICENSE_FILES = LICENSE
PYTHON_DEBTCOLLECTOR_DEPENDENCIES = host-python-pbr

$(eval $(python-package))
