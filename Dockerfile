ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# DEVICE=cpu (default) takes PyTorch's CPU build from its CPU index, keeping the image small;
# DEVICE=cuda takes the PyPI build, which carries CUDA.
ARG DEVICE=cpu
# EXTRAS=generate adds diffusers, for the hf pack's REPLACE (the GPU compose file sets it).
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NSX_HOST=0.0.0.0 \
    NSX_PORT=8000 \
    NSX_DEVICE=auto

RUN python3 -m venv /opt/nsx
ENV PATH=/opt/nsx/bin:$PATH

WORKDIR /src
# Dependencies first, so editing code does not reinstall them. Then what no pack runs goes
# (scripts/image-removes.txt says why for each); tests/test_slim_image.py runs every pack without it:
# - the distributions listed there;
# - one OpenCV instead of two: mediapipe asks for opencv-contrib-python, rapidocr for
#   opencv-python-headless; both install the same cv2 package, and the contrib build also needs the
#   system's GL and X11 libraries. The headless build alone serves both (neither uses contrib's
#   extra modules), so the image needs no GL stack;
# - dlib's 68-point landmark model (100 MB; the photo pack uses the 5-point one), and PyTorch's C++
#   headers and test binaries (only for compiling extensions, which nsx never does).
COPY pyproject.toml README.md ./
COPY scripts/image-removes.txt ./
RUN mkdir -p program_dsl modules/core modules/shapes modules/photo app \
    && touch program_dsl/__init__.py modules/__init__.py modules/core/__init__.py modules/shapes/__init__.py \
             modules/photo/__init__.py app/__init__.py \
    && if [ "$DEVICE" = "cpu" ]; then \
         pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
         || pip install "torch==2.13.0"; \
       fi \
    && pip install ".${EXTRAS:+[$EXTRAS]}" \
    && pip uninstall -y nsx && rm -rf program_dsl modules app build *.egg-info \
    && pip uninstall -y $(grep -v '^#' image-removes.txt) \
    && CV=$(pip show opencv-python-headless | sed -n 's/^Version: //p') \
    && pip uninstall -y opencv-contrib-python opencv-python-headless \
    && pip install --no-deps "opencv-python-headless==$CV" \
    && python3 -c "import cv2, mediapipe, rapidocr" \
    && case "$EXTRAS" in *generate*) python3 -c "import diffusers, accelerate" ;; esac \
    && find /opt/nsx -name shape_predictor_68_face_landmarks.dat -delete \
    && TORCH=$(python3 -c "import os, torch; print(os.path.dirname(torch.__file__))") \
    && rm -rf "$TORCH/include" "$TORCH/test" image-removes.txt
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
