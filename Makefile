# Optional shortcuts; the README's commands work without make.
.PHONY: demo test install bench
demo:
	bash tools/demo.sh
test:
	bash tools/test.sh
install:
	bash tools/install.sh
bench: install
	.venv/bin/python benchmarks/features.py
