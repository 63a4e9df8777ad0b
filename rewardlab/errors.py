"""The one exception type users see: an error they can fix, printed by the CLI as one line."""


class RewardlabError(Exception):
    """Something the user can fix (bad file, unknown model, bad config).

    The CLI prints ``rewardlab: <message>`` on one line and exits with status 2; the message says
    what was wrong, where (file and row when there is one), and what to do.
    """
