ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# DEVICE=cpu (default) takes PyTorch's CPU build from its CPU index, keeping the image small;
# DEVICE=cuda takes the PyPI build, which carries CUDA.
ARG DEVICE=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NSX_HOST=0.0.0.0 \
    NSX_PORT=8000 \
    NSX_DEVICE=auto

# The photo pack's OpenCV (the build mediapipe depends on) links against libGL and GLib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/nsx
ENV PATH=/opt/nsx/bin:$PATH

WORKDIR /src
# Dependencies first, so editing code does not reinstall them. mediapipe requires JAX for its
# model-conversion tools only; the legacy solutions the photo pack runs never import it
# (tests/test_photo_locate.py checks), and it weighs ~360 MB, so it is removed; so is dlib's
# 68-point landmark model (100 MB), which the photo pack does not read (it uses the 5-point one).
COPY pyproject.toml README.md ./
RUN mkdir -p program_dsl modules/core modules/shapes modules/photo app \
    && touch program_dsl/__init__.py modules/__init__.py modules/core/__init__.py modules/shapes/__init__.py \
             modules/photo/__init__.py app/__init__.py \
    && if [ "$DEVICE" = "cpu" ]; then \
         pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
         || pip install "torch==2.13.0"; \
       fi \
    && pip install . \
    && pip uninstall -y nsx && rm -rf program_dsl modules app build *.egg-info \
    && pip uninstall -y jax jaxlib \
    && find /opt/nsx -name shape_predictor_68_face_landmarks.dat -delete
COPY program_dsl ./program_dsl
COPY modules ./modules
COPY app ./app
RUN pip install --no-deps . && rm -rf /src/build /src/*.egg-info

RUN useradd --system --uid 10001 --home-dir /home/nsx --create-home nsx
USER nsx
WORKDIR /home/nsx

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('NSX_PORT','8000'), timeout=2)" || exit 1
CMD ["nsx", "serve"]
