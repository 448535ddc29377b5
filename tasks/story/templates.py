"""The Sparse Frontier's prompt strings for the story tasks, vendored verbatim.

Copied from PiotrNawrot/sparse-frontier (Apache-2.0, commit 31d86c1), files
`sparse_frontier/tasks/abstract_prompt.py` (the shared `<context>` / `<answer>` template),
`sparse_frontier/tasks/story/templates.py` (`TASK_INTRO`) and `sparse_frontier/tasks/story/{retrieval,multihop,
filtering}.py` (questions, answer formats, extra instructions). Only the strings are taken; the Python around them
is sparsebench's. `tests/tasks/test_story.py` pins them with golden hashes.
"""
from __future__ import annotations

# sparse_frontier/tasks/abstract_prompt.py: _BASE_TEMPLATE (the trailing space after "identified" is upstream's)
_BASE_TEMPLATE = """{task_intro}

{question_intro}

{question_section}

<context>
{context}
</context>

{question_repeat_section}

Instructions:
1. First, provide a brief explanation of your reasoning process. Explain how you identified 
   the relevant information from the context and how you determined your answer.
2. Then, provide your final answer following this exact format:
<answer>
{answer_format}
</answer>

Your response must follow this structure exactly:
<explanation>
Your explanation here...
</explanation>
<answer>
Your answer here...
</answer>

Important:
{extra_instructions}
- Keep your explanations clear, coherent, concise, and to the point.
- Do not include any additional text, explanations, or reasoning in the answer section. Follow the answer format exactly.
"""

# sparse_frontier/tasks/abstract_prompt.py: SINGLEQ_PROMPT_TEMPLATE, MULTIPLEQ_PROMPT_TEMPLATE
SINGLEQ_PROMPT_TEMPLATE = _BASE_TEMPLATE.format(
    task_intro="{task_intro}",
    context="{context}",
    question_intro="Below is your question. I will state it both before and after the context.",
    question_section="<question>\n{question}\n</question>",
    question_repeat_section="<question_repeated>\n{question}\n</question_repeated>",
    answer_format="{answer_format}",
    extra_instructions="{extra_instructions}",
)
MULTIPLEQ_PROMPT_TEMPLATE = _BASE_TEMPLATE.format(
    task_intro="{task_intro}",
    context="{context}",
    question_intro="Below are your questions. I will state them both before and after the context.",
    question_section="<questions>\n{question}\n</questions>",
    question_repeat_section="<questions_repeated>\n{question}\n</questions_repeated>",
    answer_format="{answer_format}",
    extra_instructions="{extra_instructions}",
)

# sparse_frontier/tasks/story/templates.py: TASK_INTRO
TASK_INTRO = (
    "You are given a narrative composed of multiple chapters. Throughout these chapters, "
    "the protagonist travels between different locations, meets various characters, and "
    "engages in trading activities. All items mentioned in the "
    "narrative are unique, and their ownership can change through trades. Your task is to "
    "carefully read the narrative and answer the questions based on the provided information."
)

# sparse_frontier/tasks/story/retrieval.py
RETRIEVAL_ANSWER_FORMAT = """1. ANSWER_ONE
2. ANSWER_TWO
etc."""
RETRIEVAL_EXTRA_INSTRUCTIONS = """
- For answers, use one line per answer with the number prefix
- Do not include articles like 'the' or 'a' in answers
- Answers should be specific names/items/locations mentioned in the text
""".strip()
RETRIEVAL_QUESTIONS = {
    "location": "{i}. In Chapter {chapter}, which specific location did the protagonist visit?",
    "character": "{i}. In Chapter {chapter}, which character did the protagonist interact with?",
    "item": "{i}. In Chapter {chapter}, which specific item was acquired by the protagonist?",
}
RETRIEVAL_PROMPT = MULTIPLEQ_PROMPT_TEMPLATE.format(
    task_intro=TASK_INTRO, question="{questions}", context="{context}", answer_format=RETRIEVAL_ANSWER_FORMAT,
    extra_instructions=RETRIEVAL_EXTRA_INSTRUCTIONS)

# sparse_frontier/tasks/story/multihop.py
MULTIHOP_QUESTION = "What was the last item that the protagonist acquired before acquiring {target_item}?"
MULTIHOP_ANSWER_FORMAT = "ITEM_NAME"
MULTIHOP_EXTRA_INSTRUCTIONS = """
- Provide only the item name in the answer section.
- Do not include articles like 'the' or 'a' in your answer.
- The item name must be exactly as mentioned in the text.
""".strip()
MULTIHOP_PROMPT = SINGLEQ_PROMPT_TEMPLATE.format(
    task_intro=TASK_INTRO, question="{question}", context="{context}", answer_format=MULTIHOP_ANSWER_FORMAT,
    extra_instructions=MULTIHOP_EXTRA_INSTRUCTIONS)

# sparse_frontier/tasks/story/filtering.py
FILTERING_QUESTION = """Identify all chapters where the protagonist did not buy any item.
Note: There are exactly {num_chapters} chapters without any purchases."""
FILTERING_ANSWER_FORMAT = "chapter_id_1, chapter_id_2, ..."
FILTERING_EXTRA_INSTRUCTIONS = """
- In the answer section, provide only the chapter IDs separated by commas.
""".strip()
FILTERING_PROMPT = SINGLEQ_PROMPT_TEMPLATE.format(
    task_intro=TASK_INTRO, question="{question}", context="{context}", answer_format=FILTERING_ANSWER_FORMAT,
    extra_instructions=FILTERING_EXTRA_INSTRUCTIONS)
