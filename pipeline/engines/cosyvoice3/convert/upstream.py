"""Constants that upstream CosyVoice3 keeps in code, not in cosyvoice3.yaml (commit ace7c47).

The converter writes them into the bundle manifest; the runtime reads them from there only.
"""

# cosyvoice/cli/model.py: CosyVoice3Model.silent_tokens; runs longer than 5 are cut before the flow.
SILENT_TOKENS = [1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323]
MAX_SILENT_RUN = 5
# cosyvoice/llm/llm.py: Qwen2LM.inference defaults (ratios of the tts-text token count).
MIN_TOKEN_TEXT_RATIO = 2
MAX_TOKEN_TEXT_RATIO = 20
# Hard-coded in Qwen2LM.inference (asserted present in the text ids).
ENDOFPROMPT_ID = 151646
SYSTEM_PREFIX = "You are a helpful assistant.<|endofprompt|>"
# cosyvoice/flow/flow.py: CausalMaskedDiffWithDiT.inference calls the CFM with n_timesteps=10.
FLOW_N_TIMESTEPS = 10
# cosyvoice/flow/flow_matching.py: rand_noise = randn([1, 80, 50 * 300]) after set_all_random_seed(0).
FLOW_NOISE_SEED = 0
FLOW_NOISE_FRAMES = 15000
# cosyvoice/hifigan/generator.py: SineGen2 sine_waves = rand(1, 300 * sampling_rate, 9).
HIFT_NOISE_TABLE_SECONDS = 300
# tokenizer.py: CosyVoice3Tokenizer special tokens in upstream order (ids from 151646 on).
FILE_NAMES_REQUIRED = ["cosyvoice3.yaml", "llm.pt", "flow.pt", "hift.pt", "flow.decoder.estimator.fp32.onnx",
                       "CosyVoice-BlankEN/config.json"]
FILE_NAMES_OPTIONAL = ["campplus.onnx", "speech_tokenizer_v3.onnx", "CosyVoice-BlankEN/vocab.json",
                       "CosyVoice-BlankEN/merges.txt", "CosyVoice-BlankEN/tokenizer_config.json"]
