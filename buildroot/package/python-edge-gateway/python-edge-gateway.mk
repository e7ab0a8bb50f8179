################################################################################
#
# python-edge-gateway
#
################################################################################

# The app is built from this repository (app/); its version is edge_gateway.__version__
# (app/edge_gateway/__init__.py, which pyproject.toml reads; app/tests/image checks they agree).
PYTHON_EDGE_GATEWAY_VERSION = 0.1.0
PYTHON_EDGE_GATEWAY_SITE = $(BR2_EXTERNAL_EDGE_GATEWAY_PATH)/../app
PYTHON_EDGE_GATEWAY_SITE_METHOD = local
PYTHON_EDGE_GATEWAY_SETUP_TYPE = setuptools
PYTHON_EDGE_GATEWAY_LICENSE = Apache-2.0
PYTHON_EDGE_GATEWAY_UNITS_DIR = $(BR2_EXTERNAL_EDGE_GATEWAY_PATH)/../systemd

# Same user as systemd/edge-gateway.sysusers: the root file system is
# read-only, so it is created at build time. dialout: the RS-485 ports.
define PYTHON_EDGE_GATEWAY_USERS
	edge-gateway -1 edge-gateway -1 * /var/lib/edge-gateway - dialout edge-gateway service
endef

define PYTHON_EDGE_GATEWAY_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(PYTHON_EDGE_GATEWAY_UNITS_DIR)/edge-gateway.service \
		$(TARGET_DIR)/usr/lib/systemd/system/edge-gateway.service
	$(INSTALL) -D -m 0644 $(PYTHON_EDGE_GATEWAY_UNITS_DIR)/edge-gateway.sysusers \
		$(TARGET_DIR)/usr/lib/sysusers.d/edge-gateway.conf
	$(INSTALL) -D -m 0644 $(PYTHON_EDGE_GATEWAY_UNITS_DIR)/edge-gateway.tmpfiles \
		$(TARGET_DIR)/usr/lib/tmpfiles.d/edge-gateway.conf
	$(if $(BR2_PACKAGE_RAUC), \
		$(INSTALL) -D -m 0644 $(PYTHON_EDGE_GATEWAY_UNITS_DIR)/edge-gateway-mark-good.service \
			$(TARGET_DIR)/usr/lib/systemd/system/edge-gateway-mark-good.service; \
		$(INSTALL) -D -m 0644 $(PYTHON_EDGE_GATEWAY_UNITS_DIR)/edge-gateway-mark-good.timer \
			$(TARGET_DIR)/usr/lib/systemd/system/edge-gateway-mark-good.timer)
endef

# The image carries only what the runtime imports: the test kit is for tests, benchmarks and `make demo`
# (same list as tools/image/build-image; the reference consumer is app/tests/consumer.py, outside the package).
PYTHON_EDGE_GATEWAY_TEST_ONLY = edge_gateway/testkit.py edge_gateway/testkit_etcd.py

define PYTHON_EDGE_GATEWAY_REMOVE_TEST_ONLY
	rm -f $(addprefix $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/,$(PYTHON_EDGE_GATEWAY_TEST_ONLY))
endef
PYTHON_EDGE_GATEWAY_POST_INSTALL_TARGET_HOOKS += PYTHON_EDGE_GATEWAY_REMOVE_TEST_ONLY

# The git revision of this tree, for edge_gateway_build_info{revision} (same as tools/image/build-image);
# without git history the gateway reports "unknown".
define PYTHON_EDGE_GATEWAY_BAKE_REVISION
	rev=$$(git -C $(BR2_EXTERNAL_EDGE_GATEWAY_PATH)/.. rev-parse HEAD 2>/dev/null) && \
		printf '%s\n' "$$rev" > $(@D)/edge_gateway/REVISION || true
endef
PYTHON_EDGE_GATEWAY_PRE_BUILD_HOOKS += PYTHON_EDGE_GATEWAY_BAKE_REVISION

$(eval $(python-package))
