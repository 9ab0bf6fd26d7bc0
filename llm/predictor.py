"""PaddleNLP's llm/predictor.py, with the loop cleanup: see paddlenlp_ext.predictor.

    python llm/predictor.py --model llama2 --remove_loop_assign
"""

import sys

from paddlenlp_ext.predictor import main

if __name__ == "__main__":
    sys.exit(main())
