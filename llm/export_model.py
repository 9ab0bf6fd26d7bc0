"""PaddleNLP's llm/export_model.py, on Paddle 3.x: see paddlenlp_ext.export_model.

    python llm/export_model.py --model llama2 --output_path out/llama2 --loop paddlenlp --export_format legacy
"""

import sys

from paddlenlp_ext.export_model import main

if __name__ == "__main__":
    sys.exit(main())
