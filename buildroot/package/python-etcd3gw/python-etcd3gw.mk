################################################################################
#
# python-etcd3gw
#
################################################################################

PYTHON_ETCD3GW_VERSION = 2.7.0
PYTHON_ETCD3GW_SOURCE = etcd3gw-$(PYTHON_ETCD3GW_VERSION).tar.gz
# PyPI's stable sdist path (redirects to the hashed files.pythonhosted.org location)
PYTHON_ETCD3GW_SITE = https://files.pythonhosted.org/packages/source/e/etcd3gw
PYTHON_ETCD3GW_SETUP_TYPE = setuptools
PYTHON_ETCD3GW_LICENSE = Apache-2.0
PYTHON_ETCD3GW_LICENSE_FILES = LICENSE
# pbr is its build backend; at run time 0001 replaces its one import (Buildroot has pbr for the host only)
PYTHON_ETCD3GW_DEPENDENCIES = host-python-pbr

$(eval $(python-package))
