"""sitok.infer"""
