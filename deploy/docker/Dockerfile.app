# Bulwark's application image: the project installed (pip, from PyPI) in a venv on the base image.
# The base must provide Debian's python3 (3.11), python3-venv, python3-bpfcc (bcc for the monitor and
# enforcer) and bpftool; scripts/build-images.sh makes one with debootstrap (no registry needed).
ARG BASE_IMAGE=bulwark/base:bookworm
FROM ${BASE_IMAGE}
ENV VIRTUAL_ENV=/opt/bulwark/venv \
    PATH=/opt/bulwark/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BULWARK_DATA_DIR=/var/lib/bulwark
# System site packages: `import bcc` comes from Debian's python3-bpfcc.
RUN /usr/bin/python3 -m venv --system-site-packages "$VIRTUAL_ENV"
WORKDIR /opt/bulwark/src
# Dependencies first (a layer that survives source edits).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -q -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY . ./
# Editable: the services find bpf/ and shared/proto through the source tree.
RUN pip install -q --no-deps -e . && python -m shared.protogen && python -c "import bcc, services.feeder" \
 && mkdir -p /var/lib/bulwark
CMD ["bulwark", "--help"]
