"""dfl: decentralized federated learning simulated in JAX."""
from setuptools import find_packages, setup

setup(
    name="dfl",
    version="0.1.0",
    description="Decentralized optimization simulated in JAX: all nodes in one compiled program.",
    python_requires=">=3.10",
    packages=find_packages(include=["dfl", "dfl.*", "topologies", "topologies.*",
                                    "experiments", "experiments.*", "launch", "launch.*"]),
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2",
        "numpy>=1.26",
        "ml-collections>=0.1.1",
        "orbax-checkpoint>=0.11",
        "absl-py>=2.0",
        "tqdm>=4.60",
        "scikit-learn>=1.3",  # carries the embedded default dataset (digits)
        "matplotlib>=3.7",  # figures of runs, sweeps and topologies
        "networkx>=3.0",  # random graphs, connectivity and diameter in topologies/
        "scipy>=1.10",  # Newton-CG for the exact minimizer of L2 logistic regression (dfl/optimum.py)
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "tensorboardX>=2.6"],
        # Live TensorBoard events without TensorFlow (needs only numpy + protobuf).
        "tensorboard": ["tensorboardX>=2.6"],
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
